"""Audio features: MFCC (librosa), VGGish."""
