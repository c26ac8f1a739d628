"""Tiny loaders for data that a package ships (scikit-learn's bundled sets); nothing downloads.

scikit-learn is imported inside the loaders, never at ``import losslab``.
"""
