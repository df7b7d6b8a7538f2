"""Dataset readers shared by the trainers, analysis/ and data/ scripts."""
