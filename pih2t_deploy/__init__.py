"""pih2t-deploy: train, fold, export and serve PI-H2T long-tailed image classifiers."""

__version__ = "0.1.0"
