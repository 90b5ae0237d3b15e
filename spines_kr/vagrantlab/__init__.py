"""The Vagrant multi-VM lab, booted on one machine without touching the machine's own network.

``spines-kr vagrant up TOPOLOGY.toml`` (or ``scripts/run vagrant``) builds, on this machine:

* **a box** (``box``): a small Debian image for Vagrant's libvirt provider, made from Debian's
  packages with mmdebstrap, cached under ``/var/cache/spines-kr/vagrant`` and rebuilt only when
  its recipe changes;
* **a lab** (``lab``): a network namespace ``skvag-<lab>`` holding a libvirtd of the lab's own
  (its configuration, state and run directories bind-mounted from the lab's directory in a
  private mount namespace), Vagrant itself, every bridge, tap, dnsmasq and VM; one VM per node
  of the topology file (``vagrant/Vagrantfile`` and ``spines_kr.deploy.vagrant``), spines-kr
  installed from this checkout (dependencies from a local wheelhouse: the VMs reach no
  network) and running as ``spines-kr@overlay``.

``spines-kr vagrant down`` removes all of it (VMs, networks, namespace, disk images, files),
also after a crash: whatever it needs to know is in the lab's directory, and every process it
stops is one that directory names (pid files of our libvirtd, its qemus and dnsmasqs) or one
that runs inside the lab's namespace.  ``safety.snapshot()`` is the before/after check of the
machine's own network that the lab runs around ``up`` and ``down``.
"""
