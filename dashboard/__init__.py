"""Streamlit dashboard over the coordinator's data (later issues)."""
