"""Training configs (ml_collections, one file per recipe); `default.py` holds every default."""
