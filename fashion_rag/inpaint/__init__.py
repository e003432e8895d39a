"""Stage 3: what the 27-channel Fashion-RAG UNet sees besides the noisy latent (mask, pose
heatmaps), its weight layouts, and the reference DDIM sampler."""
