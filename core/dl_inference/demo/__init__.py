"""The built-in demo model repository that ``dl-inference serve`` uses with no config."""
