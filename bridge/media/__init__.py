"""The media legs between a call and Asterisk, behind one interface (`leg`), and what they
share: the 20 ms clock (`ticker`) and the RTP port pool (`ports`)."""
