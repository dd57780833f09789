"""`vfnn study`: declarative, resumable train -> specs -> verify -> report grids (docs/studies.md)."""
