"""RTP: packet codec, sequencing and outbound pacing. Pure: no sockets, no clocks."""
