"""Loading trained checkpoints and generating text from them."""
