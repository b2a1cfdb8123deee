"""The stages of the flow as plain functions over the store."""
