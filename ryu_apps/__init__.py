"""The os-ken controller: membership policy (pure logic), gateway app, launcher."""
