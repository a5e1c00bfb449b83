"""The genfarm command line: thin click commands over jobs/, storage/ and workers/."""
