"""shopml: the stages of the e-commerce model pipeline as plain, typed functions.

Importing this package does nothing: no directories are created and no tracking URI is set.
"""
