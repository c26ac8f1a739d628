"""Tiny loaders for data that a package ships (scikit-learn's bundled sets); nothing downloads."""
