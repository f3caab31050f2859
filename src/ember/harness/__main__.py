from ember.harness.runtime import main

main()
