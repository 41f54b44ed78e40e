"""Pure computation on media: decoding, RGB, flow and audio features. Never imports Beam."""
