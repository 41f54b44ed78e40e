"""Data contracts of actprep: manifest records, label maps, the sample layout, the index schema."""
