"""Data: preprocessing (the one shared definition), long-tailed data sets and samplers."""
