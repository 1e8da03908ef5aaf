"""Make this machine able to build: `probe` reads it, `plan` decides, `setup` acts."""
