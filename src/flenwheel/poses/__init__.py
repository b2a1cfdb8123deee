"""Body pose: landmarks from a body-pose model, and pose tags (standing, sitting, T-pose...) from them."""
