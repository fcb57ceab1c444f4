"""The detection bench: held-out attack and benign sources, the rails of one or two revisions, the report."""
