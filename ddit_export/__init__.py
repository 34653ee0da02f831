"""ddit-export: DDiT dynamic patch scheduling, compiled to one static engine per patch size."""

__version__ = "0.1.0"
