"""Raw sources, downloads, the demo, COCO and Visual Genome, annotation tables, images, transforms,
word embeddings, WordNet."""
