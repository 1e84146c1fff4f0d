"""dbmazz."""
