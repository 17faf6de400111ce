"""The ipsec backend: strongSwan's charon negotiates IKEv2/ESP with every peer; flanneld installs
the XFRM policies and loads charon's connections as desired state (see ``backend``)."""
