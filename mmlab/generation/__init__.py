"""Text-to-image generation (notebook 06): generator families behind the workspace's registry
(latent diffusion, a VQ transformer) and their faithfulness, scored in-domain by an attribute
checker, R-precision and Frechet distances on the checker's features."""
