"""Applications built on the toolkit (the last layer: nothing but the CLI registry imports them)."""
