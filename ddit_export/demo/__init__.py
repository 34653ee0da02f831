"""The embedded demo model: a small FLUX-architecture transformer trained from scratch on procedural
class-conditioned images, shipped with its DDiT adapters, class embeddings and a scoring classifier.

`--model demo` loads `assets/demo/transformer` (a model shipped with the package);
`ddit-export demo` runs the whole story.
"""
