"""offers layer of Mia."""
