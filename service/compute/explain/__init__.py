"""Explanations (API.md §10): integrated gradients, saliency, gradient × input and SmoothGrad.

`prepare` checks one request's options and arrays with numpy only (adapters call it on the event loop);
`kernel` builds the attribution graph over any differentiable callable F; `engine` compiles it for posted
networks and runs every instance × step of merged requests in one call.
"""
