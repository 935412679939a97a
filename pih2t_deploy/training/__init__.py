"""Training: losses, the two-stage engine, evaluation with Many/Medium/Few groups."""
