"""Socket types of the pack, declared once (as custom io types) and shared by all nodes."""

from comfy_api.latest import io

# A loaded catalog index (fashion_rag.retrieval.index.GarmentIndex).
GarmentIndexType = io.Custom("FASHION_RAG_INDEX")
# Retrieval results: fashion_rag.retrieval.garments.Garments (ids, scores, categories, paths, images).
GarmentsType = io.Custom("FASHION_RAG_GARMENTS")
# The inversion adapter (wrapped for ComfyUI's memory manager).
AdapterType = io.Custom("FASHION_RAG_ADAPTER")
# 18-channel pose heatmaps [B, 18, H, W] in [0, 1] (COCO-18 / OpenPose order).
PoseType = io.Custom("FASHION_RAG_POSE")
# What DWPose/OpenPose preprocessors (comfyui_controlnet_aux) output: keypoints per person.
PoseKeypointType = io.Custom("POSE_KEYPOINT")
