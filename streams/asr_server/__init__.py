"""The local ASR server: the DashScope protocol in front of a scripted or a real engine."""
