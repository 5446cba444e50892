"""Per-image saliency beside the filter explanations: where the target CNN looks for each class
(Grad-CAM, Grad-CAM++, Score-CAM, Ablation-CAM from pytorch-grad-cam; LIME), scored against the
ground-truth masks, with controls, agreement between methods, faithfulness and cost."""
