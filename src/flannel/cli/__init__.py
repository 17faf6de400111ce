"""Command-line entry points: flanneld and flannelctl."""
