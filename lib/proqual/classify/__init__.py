"""PI-RADS and ISUP classification on a ProFound-compatible backbone: data, finetuning, inference,
FCMAE-style pretraining of the small backbone and the image-quality experiment grid."""
