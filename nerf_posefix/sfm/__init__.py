"""Floor 3: the structure-from-motion stages (pycolmap): inputs checked against their images, tracks built
from the images, robust bundle adjustment, and the front end that chains them with a cache. Used by
``posefix refine`` (workflows) and by the nerfstudio methods' pipeline (plugin) alike."""
