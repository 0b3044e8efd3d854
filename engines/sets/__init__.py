"""A/B sets and grids: planning variants, comparing their images (pixel similarity, pairs), and
contact sheets.
"""
