"""Readers and writers: COCO JSON, GeoJSON, images and georeferenced rasters."""
