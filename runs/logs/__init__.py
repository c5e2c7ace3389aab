"""Logs apart from orchestration: their own ingestion path (ingest.py) and how they are read (reading.py)."""
