"""Payment: charges orders whose stock is reserved (a simulation)."""
