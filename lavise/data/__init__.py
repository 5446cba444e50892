"""Raw data and its tables: the archive catalogue, downloads, the demo and its server, COCO and
Visual Genome parsing, the annotation tables and their schema, splits, masks, image decoding,
transforms, word embeddings, WordNet, the category vocabulary."""
