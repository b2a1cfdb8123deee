"""Datasets: ingest, curate (quality + identity gate), versions and exports."""
