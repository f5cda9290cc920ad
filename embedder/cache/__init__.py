"""The cache: the HDF5 file of vectors (``hdf5``: writer, reader, parts, merge) and its description for a person
(``describe``)."""
