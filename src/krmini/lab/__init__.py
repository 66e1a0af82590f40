"""The lab: the learning path from a scalar autograd engine to a character GPT.

Each module is one step, small enough to read in one sitting and tested against PyTorch:

    autograd → nn (MLP) → numpy_ops (softmax, cross-entropy, digits) → attention
    → transformer (encoder–decoder) → numpy_lm (every backward by hand) → char_gpt

The lab shares nothing with the product's model (`krmini.model.llama`); the notes in docs/lab/
say where the product does the same thing better.
"""
