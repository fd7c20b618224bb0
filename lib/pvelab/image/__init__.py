"""The guest image: Debian 12 built with debootstrap, its test packages and the apt repository."""
