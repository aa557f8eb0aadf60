"""Ray Data job definitions, built only from the library's public functions."""
