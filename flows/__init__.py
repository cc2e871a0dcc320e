"""flows layer of Mia."""
