"""serial."""
