"""unipo: DPO and its variants as one composable objective."""
