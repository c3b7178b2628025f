"""The thin napari layer: widgets, layer conversion, reader, writer, sample data."""
