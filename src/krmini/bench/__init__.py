"""`krmini bench …`: measured speed and quality figures, each sub-benchmark in its own module."""
